//! The MCP server of the sandbox service (rmcp): not written yet.
