"""LiAIDS."""
