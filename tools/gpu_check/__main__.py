import sys

from tools.gpu_check.run import main

if __name__ == "__main__":
    sys.exit(main())
