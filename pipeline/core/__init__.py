"""What every module shares: validated params, user-facing errors, atomic outputs, hashing, tables, progress."""
