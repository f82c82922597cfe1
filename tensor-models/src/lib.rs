//! Model families built only from tensor-nn. Filled by the LLM issue; nothing here yet.
