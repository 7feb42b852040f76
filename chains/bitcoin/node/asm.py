"""Script disassembly as Core's ``ScriptToAsmStr`` prints it (src/core_io.cpp).

Used only for the ``asm`` fields of RPC views. Pushes of at most four bytes print as
CScriptNum integers, longer pushes as hex, other opcodes by Core's GetOpName. The
signature-hash-type decoding Core applies to scriptSigs ("[ALL]") is not done here.
"""

from __future__ import annotations

#: GetOpName for 0x61..0xba, in opcode order (src/script/script.cpp).
_NAMES_61 = (
    "NOP", "VER", "IF", "NOTIF", "VERIF", "VERNOTIF", "ELSE", "ENDIF", "VERIFY", "RETURN",
    "TOALTSTACK", "FROMALTSTACK", "2DROP", "2DUP", "3DUP", "2OVER", "2ROT", "2SWAP", "IFDUP",
    "DEPTH", "DROP", "DUP", "NIP", "OVER", "PICK", "ROLL", "ROT", "SWAP", "TUCK", "CAT",
    "SUBSTR", "LEFT", "RIGHT", "SIZE", "INVERT", "AND", "OR", "XOR", "EQUAL", "EQUALVERIFY",
    "RESERVED1", "RESERVED2", "1ADD", "1SUB", "2MUL", "2DIV", "NEGATE", "ABS", "NOT",
    "0NOTEQUAL", "ADD", "SUB", "MUL", "DIV", "MOD", "LSHIFT", "RSHIFT", "BOOLAND", "BOOLOR",
    "NUMEQUAL", "NUMEQUALVERIFY", "NUMNOTEQUAL", "LESSTHAN", "GREATERTHAN", "LESSTHANOREQUAL",
    "GREATERTHANOREQUAL", "MIN", "MAX", "WITHIN", "RIPEMD160", "SHA1", "SHA256", "HASH160",
    "HASH256", "CODESEPARATOR", "CHECKSIG", "CHECKSIGVERIFY", "CHECKMULTISIG",
    "CHECKMULTISIGVERIFY", "NOP1", "CHECKLOCKTIMEVERIFY", "CHECKSEQUENCEVERIFY", "NOP4",
    "NOP5", "NOP6", "NOP7", "NOP8", "NOP9", "NOP10", "CHECKSIGADD",
)


def op_name(op: int) -> str:
    if op == 0x4F:
        return "-1"
    if 0x51 <= op <= 0x60:
        return str(op - 0x50)
    if 0x61 <= op <= 0xBA:
        return "OP_" + _NAMES_61[op - 0x61]
    special = {
        0x4C: "OP_PUSHDATA1",
        0x4D: "OP_PUSHDATA2",
        0x4E: "OP_PUSHDATA4",
        0x50: "OP_RESERVED",
        0xFF: "OP_INVALIDOPCODE",
    }
    return special.get(op, "OP_UNKNOWN")


def _script_num(data: bytes) -> int:
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def _push_size(script: bytes, pc: int, op: int) -> tuple[int, int]:
    """(data length, position of the data) for a push opcode at ``pc``."""
    if op < 0x4C:
        return op, pc + 1
    width = {0x4C: 1, 0x4D: 2, 0x4E: 4}[op]
    if pc + 1 + width > len(script):
        raise IndexError
    return int.from_bytes(script[pc + 1 : pc + 1 + width], "little"), pc + 1 + width


def script_to_asm(script: bytes) -> str:
    parts: list[str] = []
    pc = 0
    while pc < len(script):
        op = script[pc]
        if op > 0x4E:
            parts.append(op_name(op))
            pc += 1
            continue
        try:
            size, start = _push_size(script, pc, op)
        except IndexError:
            size, start = len(script), len(script) + 1
        if start + size > len(script):
            parts.append("[error]")
            break
        data = script[start : start + size]
        parts.append(str(_script_num(data)) if size <= 4 else data.hex())
        pc = start + size
    return " ".join(parts)
