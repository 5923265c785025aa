--- User commands: `:DlspStatus` (model, device, state, latency).

local M = {}

function M.create()
  vim.api.nvim_create_user_command("DlspStatus", function()
    require("dlsp.status").show()
  end, { desc = "dlsp: model, device, state and recent latency", force = true })
end

return M
