"""DensePose R-CNN on torch + torchvision: loads detectron2/DensePose configs and model-zoo weights unchanged.

config.py reads the yaml (``_BASE_`` chain over detectron2's defaults); weights.py loads ``.pkl``/``.pth``
safely and strictly; model/ is the network with detectron2's parameter names; predictor.py runs it as
detectron2's DefaultPredictor does, batched; stage.py is the Ray pipeline stage; tiny.py the toy model.
"""
