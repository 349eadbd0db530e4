"""Perceptual similarity on CXRs (SPEC S2): the BAPPS test-set layout, image
distances (L2, SSIM, MS-SSIM, deep features from a registry classifier, LPIPS-style
learned linear weights) and the LPIPS scores (2AFC agreement, JND mAP)."""
