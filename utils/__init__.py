"""Shared code of the course "Residual Networks, Step by Step".

Submodules (import the one you need; importing ``utils`` itself does nothing else):

- ``utils.config``: quick/full mode (``RESNET_MODE``) and the data directory (``RESNET_DATA``)
- ``utils.models``: ResNet blocks and networks, torchvision-compatible
- ``utils.data``: CIFAR-10 / MNIST as arrays, batch loaders with on-device augmentation
- ``utils.train``: ``fit``, ``evaluate``, schedules, seeding, checkpoints
- ``utils.plot``: training curves, gradient norms, image grids, confusion matrices
- ``utils.cost``: multiply-adds and forward latency
- ``utils.analysis``: the paper's CIFAR-10 reproduction (recipe, resumable runs, Table 6 / Fig. 6),
  lesions, loss landscapes
- ``utils.results``: result files that record the command, commit, device and versions
"""

__version__ = "0.1.0"
