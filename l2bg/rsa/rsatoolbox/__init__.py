"""rsatoolbox on l2bg: ``calc_rdm``, ``compare``, ``prec_from_measurements`` and
``prec_from_residuals`` with rsatoolbox 0.3.2's signatures, objects in and out, computed by
l2bg's torch backends (CPU; CUDA, with Triton for float32 correlation RDMs).

Either call them directly, or add one line to existing rsatoolbox code::

    import l2bg.rsa.rsatoolbox as fast
    fast.patch()            # or: with fast.patch(): ...

``patch()`` rebinds every reference rsatoolbox holds to these functions (``BINDINGS``:
``rsatoolbox.rdm``, ``.rdm.calc``, ``.rdm.compare``, ``.data``, ``.data.noise``,
``.inference.evaluate``, ``.inference.noise_ceiling``, ``.model.fitter``,
``.util.searchlight``), so model evaluation, noise ceilings, model fitting and searchlights run
on l2bg too, and so do names imported from rsatoolbox before ``patch()`` (a script's ``from
rsatoolbox.rdm import calc_rdm``); ``unpatch()`` restores rsatoolbox's own objects.

Conventions are rsatoolbox's, not l2bg's (docs/design.md, "Relation to scipy and rsatoolbox"):
euclidean is the squared distance over the channel count, mahalanobis takes a precision matrix,
crossnobis is cross-validated over folds as rsatoolbox does, constant patterns give NaN
correlation distances, tau-b of a constant RDM is NaN. Arithmetic is float64 unless float32 is
opted in (``configure(dtype='float32')``, ``patch(dtype=...)`` or ``dtype=`` per call). Methods
and inputs outside the fast path go to rsatoolbox unchanged. rsatoolbox is imported on first use;
without it every function raises a one-line ``L2BGError`` naming ``pip install rsatoolbox``.
"""

from l2bg.rsa.rsatoolbox.calc import calc_rdm
from l2bg.rsa.rsatoolbox.compare import compare
from l2bg.rsa.rsatoolbox.crossval import bootstrap_crossval, cv_noise_ceiling
from l2bg.rsa.rsatoolbox.dual import eval_dual_bootstrap
from l2bg.rsa.rsatoolbox.inference import (
    boot_noise_ceiling,
    eval_bootstrap,
    eval_bootstrap_pattern,
    eval_bootstrap_rdm,
    eval_fixed,
)
from l2bg.rsa.rsatoolbox.noise import prec_from_measurements, prec_from_residuals
from l2bg.rsa.rsatoolbox.options import Options, configure
from l2bg.rsa.rsatoolbox.patch import BINDINGS, is_patched, patch, unpatch
from l2bg.rsa.rsatoolbox.searchlight import evaluate_models_searchlight

__all__ = [
    "BINDINGS",
    "Options",
    "boot_noise_ceiling",
    "bootstrap_crossval",
    "calc_rdm",
    "compare",
    "configure",
    "cv_noise_ceiling",
    "eval_bootstrap",
    "eval_bootstrap_pattern",
    "eval_bootstrap_rdm",
    "eval_dual_bootstrap",
    "eval_fixed",
    "evaluate_models_searchlight",
    "is_patched",
    "patch",
    "prec_from_measurements",
    "prec_from_residuals",
    "unpatch",
]
