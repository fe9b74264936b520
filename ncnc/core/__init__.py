"""The ground floor every stage stands on: errors, node ids, user tables, the device rule,
optional extras, and staging with atomic publication of outputs. It imports no stage."""
