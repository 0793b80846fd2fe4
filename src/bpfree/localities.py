"""The locality classes: which learning signal reaches each layer (docs/field-algorithms.md,
"Locality"). Each algorithm declares one (`Algorithm.LOCALITY`); the report shows it beside the
algorithm's name and tests/test_locality.py checks it. Not read by training, so a new label reruns
no job."""

LOCALITIES = {
    "end-to-end": "the exact gradient through every layer",
    "feedback-alignment": "the output error, carried back through fixed random matrices",
    "layer-local": "a loss computed at the layer from its own output (and a small head); no signal from above",
    "modulated-forward": "a second forward pass with an error-modulated input; no backward pass",
    "perturbation": "a directional derivative from forward-mode differentiation; no backward pass",
    "closed-form": "no gradient: random features, a readout solved in closed form",
}
