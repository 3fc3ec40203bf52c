"""dp-depth: the two-stage dynamic-programming depth compression of Kim et al. (ICML 2023)."""
