"""The original PyTorch world: state_dict mapping, a torch-free ``.pth`` reader, csa_jax's own
exports (``.npz`` and ``.safetensors``), conversion between the three formats, and the reference
PyTorch model used for parity and benchmarks."""
