"""Network building blocks shared by centers and server (torch and MONAI layers only, no data I/O)."""
