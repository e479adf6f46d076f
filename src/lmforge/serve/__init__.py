"""`lmforge serve`: an OpenAI-compatible HTTP server over a checkpoint (extra `lmforge[serve]`)."""
