"""RAG: FAISS index, retriever with a query adapter, generator LoRA, LangChain chain, tools and the REPL."""
