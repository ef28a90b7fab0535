"""The pipeline's handlers, installed as `gateway.handlers`. Their order is gateway.pipeline.BUILTIN."""
