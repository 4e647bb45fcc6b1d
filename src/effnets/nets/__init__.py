"""Network builders: the convnet builder, and (separately) ViT and CoAtNet."""
