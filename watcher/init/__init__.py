"""`watcher init`: a starting set of files for one site, rendered from shipped templates."""
