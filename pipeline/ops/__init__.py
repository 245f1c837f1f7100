"""Operations: the inbox of dropped files and the run summary."""
