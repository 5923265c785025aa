--- Pure text helpers shared by both inline paths: what "a word" and "a line" of a suggestion are.
--- No editor state here, so the rules are the same whichever path shows the ghost text.

local M = {}

--- The next word of a suggestion: leading blanks plus one run of identifier characters, else
--- one run of punctuation, else a line break with the next line's indentation.
---@param s string
---@return string
function M.next_word(s)
  return s:match("^[ \t]*[%w_]+")
    or s:match("^[ \t]*[^%w_%s]+")
    or s:match("^\n[ \t]*")
    or s:match("^%s+")
    or s:sub(1, 1)
end

--- The rest of the current line of a suggestion; when it starts with a line break, that break
--- and the whole next line.
---@param s string
---@return string
function M.next_line(s)
  if s:sub(1, 1) == "\n" then
    return "\n" .. s:sub(2):match("^[^\n]*")
  end
  return s:match("^[^\n]*")
end

---@param s string
---@param kind "all"|"word"|"line"
---@return string
function M.piece(s, kind)
  if kind == "word" then
    return M.next_word(s)
  elseif kind == "line" then
    return M.next_line(s)
  end
  return s
end

--- The plain text of an `InlineCompletionItem.insertText` (a string or a snippet StringValue).
---@param insert_text string|{kind: string, value: string}
---@return string
function M.plain(insert_text)
  if type(insert_text) == "string" then
    return insert_text
  end
  return insert_text and insert_text.value or ""
end

--- Insert `s` at (row, col) (0-based, bytes) and put the cursor of `win` after it.
---@return integer row, integer col the 0-based position after the inserted text
function M.insert(bufnr, win, row, col, s)
  local lines = vim.split(s, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, row, col, row, col, lines)
  local end_row = row + #lines - 1
  local end_col = (#lines == 1 and col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(win, { end_row + 1, end_col })
  return end_row, end_col
end

return M
