"""Device kernels of diceloss, imported only by the backends that use them.

``triton_dice`` holds the Triton kernels of the ``triton`` backend
(:mod:`diceloss.backends.triton_kernels`); it imports Triton at module level, so nothing else in
diceloss imports it.
"""
