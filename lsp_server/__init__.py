"""dlsp's language server: pygls handlers, documents and positions, tree-sitter context,
latest-wins scheduling, post-processing. Turns documents and positions into text for `engine`
and never touches tensors."""
