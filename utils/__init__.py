"""Shared code of the course "Residual Networks, Step by Step".

Submodules (import the one you need; importing ``utils`` itself does nothing else):

- ``utils.config``: quick/full mode (``RESNET_MODE``) and the data directory (``RESNET_DATA``)
- ``utils.models``: ResNet blocks and networks, torchvision-compatible; shape and depth helpers
- ``utils.data``: CIFAR-10 / MNIST as arrays, batch loaders with on-device augmentation
- ``utils.recipes``: the ``Recipe`` of every training in the course, and ``lr_schedule``
- ``utils.train``: ``fit``, ``evaluate``, precision by device, seeding, checkpoints
- ``utils.runs``: named full-scale runs with fingerprints (``make runs``), read by the book
- ``utils.reproduction``: the paper's CIFAR-10 experiment (resumable runs, Table 6 / Fig. 6)
- ``utils.probes``: looking inside nets: forward-hook shape traces, BatchNorm randomisation,
  lesions, loss landscapes
- ``utils.plot``: training curves, gradient norms, image grids, confusion matrices
- ``utils.cost``: multiply-adds, layer tables, forward latency
- ``utils.results``: result files that record the command, commit, device and versions
- ``utils.files``: atomic writes, file locks, files of the repository
"""

__version__ = "0.1.0"
