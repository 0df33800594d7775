"""Floor 1, photonics: the optical hardware, as pure functions of physical parameters.

What lives here: the Mach-Zehnder interferometer and the single source of its transfer
convention (``mzi``), rectangular Clements and real orthogonal meshes with the public
column-propagation primitive (``mesh``), unitary-to-phases decomposition (``decompose``),
the SVD mapping of a real weight matrix onto two meshes and attenuators (``svd_mapping``),
the diagonal x unitary block approximation (``approx``) and the MZI-count area model
(``area``); later also deployment of a trained network onto phases and the physical
non-ideality models. What it may import: nothing else of the package except the
ground-floor validators (``optinc_jax.validation``); it knows nothing of gradients,
encodings or training, and starts from plain arrays. A test parses every import and
enforces this.
"""
