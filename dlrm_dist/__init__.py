"""dlrm_dist: a distributed DLRM trainer on PyTorch, TorchRec and FBGEMM."""

from dlrm_dist import compat as _compat

_compat.install_import_hooks()  # before anything imports torchrec or fbgemm_gpu
