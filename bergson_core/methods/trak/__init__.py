"""TRAK (Park et al. 2023): the kernel maths in kernel.py, the steps of `bergson trak` in run.py."""
