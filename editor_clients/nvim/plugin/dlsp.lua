if vim.g.loaded_dlsp then
  return
end
vim.g.loaded_dlsp = true
require("dlsp.commands").create()
