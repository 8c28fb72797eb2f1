"""Triton kernels for RSA (installed as ``l2bg.kernels``): RDMs (``rdm``), streamed RDMs
(``rdm_stream``) and RDM comparison (``compare``). Import the submodules explicitly; they import
triton, which ``l2bg`` itself never does at import time."""
