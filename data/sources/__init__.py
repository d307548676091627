"""Where text comes from: Debian's archive (the offline corpora), the Hugging Face hub, local files."""
