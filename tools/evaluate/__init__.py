"""`mcld-data evaluate`: the paper's metrics (FID, LPIPS, SSIM, SSIM_256, PSNR, face similarity), computed the way
the reference MCLD evaluate.py computes them, on the sampler's output folder or on the reference's own layout."""
