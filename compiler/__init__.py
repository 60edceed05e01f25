"""torch.fx front end -> IR -> bound programs (generated torch code) and their runtime."""
