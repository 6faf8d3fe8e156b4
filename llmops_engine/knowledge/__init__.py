"""Knowledge bases for retrieval-augmented generation: files → documents → chunks → index.

Modules, in build order: documents (read .md/.txt/.html/.pdf/.jsonl files), chunking
(split on paragraph, sentence and word boundaries), embedders (wordllama, MiniLM, hub
models), index (LanceDB table + BM25, searched dense, bm25 or hybrid), metrics (retrieval
quality on a question set), grounding (hits as a Prompt's {context} and a response's sources).
The KnowledgeBase controller, serving and evaluation call them. Nothing heavy is imported at
package import time.
"""
