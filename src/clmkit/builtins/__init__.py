"""clmkit's built-in plugins: ordinary plugins registered exactly like third-party ones."""
