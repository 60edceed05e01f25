"""Back-substitution, in one package: emission and runtime, in dense rows and in patch rows.

* :mod:`.emit`: the code of a back-substitution domain's program (refined intermediate bounds,
  the output from the spec) and of its dense-row functions;
* :mod:`.emit_patches`: patch-row functions for chains of 2-d convolutions;
* :mod:`.transpose`: the code of ``lam W`` for each linear map;
* :mod:`.rows` (``dense_rows`` in generated code) and :mod:`.patches` (``patch_rows``): the
  runtime, called by keyword; concretisation over the input box is there too.
"""
