"""adapt: watch and steer a multimodal LLM's text-to-image attention (ADAPT)."""

__version__ = "0.1.0"
