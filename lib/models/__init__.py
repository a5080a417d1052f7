"""The autoencoders: the registry, each model kind, the model file."""
