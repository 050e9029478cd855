"""Pixels to features: the backbone registry, running TFLite engines, the feature cache, the saved model."""
