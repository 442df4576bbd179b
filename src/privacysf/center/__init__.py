"""Center side: everything that touches raw images or masks, and every private model, lives here."""
