"""Flax (linen) models: ViT/MAE, fusion, the UniEmoX pre-training model, classifier, CLIP."""
