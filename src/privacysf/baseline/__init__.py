"""Raw-image baselines (they see pixels: center side only, never the server)."""
