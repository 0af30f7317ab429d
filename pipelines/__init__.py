"""Pure image, video and model code: no Ray, no HTTP."""
