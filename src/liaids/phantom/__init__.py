"""Triple-phase liver CT phantom: anatomy, enhancement, lesions, acquisition."""
