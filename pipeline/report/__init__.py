"""The review site: static HTML pages over the outputs of render and evaluate."""
