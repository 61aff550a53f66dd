"""pgpoolkit's integrations with other libraries, each an optional extra."""
