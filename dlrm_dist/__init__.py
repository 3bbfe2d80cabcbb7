"""dlrm_dist: a distributed DLRM trainer on PyTorch, TorchRec and FBGEMM."""

from dlrm_dist import threads as _threads

_threads.configure_openmp()  # before anything imports torch: libgomp reads it when it loads

from dlrm_dist import compat as _compat  # noqa: E402

_compat.install_import_hooks()  # before anything imports torchrec or fbgemm_gpu
