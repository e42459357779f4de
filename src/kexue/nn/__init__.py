"""Neural-network layers: rotary positions (RoPE and its extrapolation variants), attention, transformers."""
