"""fastjax: FAST (Li, Funk, Wang, Saeed) federated active learning in JAX.

The package layout follows the flow of the method:

    data -> partition -> encode -> label -> federate -> evaluate

Each stage is a subpackage whose outputs are plain values (numpy/jax arrays, pytrees,
frozen dataclasses); a stage never reaches back into an earlier one. Heavy imports
(jax, flax, transformers, torch) are made lazily inside the stages that need them.
"""

__version__ = "0.1.0"
