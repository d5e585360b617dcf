"""Pretrained weights: torchvision/timm ResNet state dicts to and from this project's
variables (`convert`), and .pth/.safetensors files read without torch (`formats`)."""
