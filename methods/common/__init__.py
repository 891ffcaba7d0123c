"""Parts shared by several method adapters; each module holds one kind of part."""
