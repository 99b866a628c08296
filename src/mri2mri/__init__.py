"""mri2mri: translate one MRI contrast into another with conditional GANs."""

__version__ = "0.1.0"
