# qvplan test guest: a one-sector boot loader that never loads anything.
#
# SeaBIOS loads this sector at 0x7C00 and jumps to it in real mode. It turns on A20, enters
# 32-bit protected mode with a flat GDT, then:
#   1. fills every 4 KiB page of the working set with MARKER repeated (256 copies per page),
#      except byte 0 of each page, which starts at 0;
#   2. writes "QVG START\n" to COM1;
#   3. sweeps the working set forever, incrementing byte 0 of each page in address order, with
#      `pace` busy-loop iterations after each page, and writes "QVG SWEEP\n" to COM1 every
#      `marker_every` sweeps (0 = never).
# So at any instant byte 0 of every page holds the same value, except that the pages before the
# one being swept are exactly one ahead. qvplan/vmm/verify.py checks exactly that.
#
# The parameter block sits at offset 0x1E0 of the image (see PARAMS below and
# qvplan/vmm/guest.py, which patches it into a per-VM copy). All fields are little-endian u32.

        .set COM1, 0x3F8
        .set PAGE, 4096

        .code16
        .text
        .globl _start
_start:
        cli
        cld
        ljmp    $0, $real_start         # some BIOSes enter at 07C0:0000; make CS 0
real_start:
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7C00, %sp

        # A20 through the "fast A20" gate of port 0x92 (bit 0 would reset the machine).
        inb     $0x92, %al
        orb     $0x02, %al
        andb    $0xFE, %al
        outb    %al, $0x92

        lgdt    gdt_desc
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmp    $0x08, $pm32            # reload CS with the 32-bit code segment

        .code32
pm32:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movl    $0x7C00, %esp

        call    serial_init

        # --- 1. fill: MARKER over every page, byte 0 = 0 ---
        movl    ws_start, %edi
        movl    ws_size, %ecx
        shrl    $12, %ecx               # pages
        jz      idle
fill_page:
        movl    $256, %edx              # 16-byte copies per page
fill_copy:
        movl    marker, %eax
        movl    %eax, 0(%edi)
        movl    marker+4, %eax
        movl    %eax, 4(%edi)
        movl    marker+8, %eax
        movl    %eax, 8(%edi)
        movl    marker+12, %eax
        movl    %eax, 12(%edi)
        addl    $16, %edi
        decl    %edx
        jnz     fill_copy
        movb    $0, -PAGE(%edi)         # the page's counter
        loop    fill_page

        # --- 2. say we are ready ---
        movl    $msg_start, %esi
        call    puts

        # --- 3. sweep forever ---
        movl    marker_every, %ebp      # sweeps left until the next marker line
sweep:
        movl    ws_start, %edi
        movl    ws_size, %ecx
        shrl    $12, %ecx
sweep_page:
        incb    (%edi)                  # one instruction: a pause never splits it
        movl    pace, %edx
        testl   %edx, %edx
        jz      paced
spin:
        decl    %edx
        jnz     spin
paced:
        addl    $PAGE, %edi
        loop    sweep_page

        testl   %ebp, %ebp              # marker_every == 0: no marker lines
        jz      sweep
        decl    %ebp
        jnz     sweep
        movl    marker_every, %ebp
        movl    $msg_sweep, %esi
        call    puts
        jmp     sweep

idle:                                   # empty working set: nothing to do
        hlt
        jmp     idle

# COM1 at 115200 8N1 with FIFOs on (QEMU ignores the rate; real UART state stays sane).
serial_init:
        movw    $COM1+1, %dx
        movb    $0x00, %al              # no interrupts
        outb    %al, %dx
        movw    $COM1+3, %dx
        movb    $0x80, %al              # DLAB on
        outb    %al, %dx
        movw    $COM1+0, %dx
        movb    $0x01, %al              # divisor 1 = 115200
        outb    %al, %dx
        movw    $COM1+1, %dx
        movb    $0x00, %al
        outb    %al, %dx
        movw    $COM1+3, %dx
        movb    $0x03, %al              # 8N1, DLAB off
        outb    %al, %dx
        movw    $COM1+2, %dx
        movb    $0xC7, %al              # FIFO on and cleared
        outb    %al, %dx
        ret

# Write the NUL-terminated string at %esi to COM1, waiting for the transmitter each byte.
puts:
        lodsb
        testb   %al, %al
        jz      puts_done
        movb    %al, %ah
        movw    $COM1+5, %dx
puts_wait:
        inb     %dx, %al
        testb   $0x20, %al
        jz      puts_wait
        movb    %ah, %al
        movw    $COM1, %dx
        outb    %al, %dx
        jmp     puts
puts_done:
        ret

msg_start:
        .asciz  "QVG START\n"
msg_sweep:
        .asciz  "QVG SWEEP\n"

        .p2align 2
marker:
        .ascii  "QVGUEST-MARKER!!"      # exactly 16 bytes

        .p2align 3
gdt:
        .quad   0
        .quad   0x00CF9A000000FFFF      # 0x08: code, base 0, limit 4 GiB, 32-bit
        .quad   0x00CF92000000FFFF      # 0x10: data, base 0, limit 4 GiB
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt

# --- PARAMS: the parameter block, patched by qvplan/vmm/guest.py ---
        .org    0x1E0
params:
        .ascii  "QVGP"                  # 0x1E0 magic
ws_start:
        .long   0x01000000              # 0x1E4 working-set start address (16 MiB)
ws_size:
        .long   0x00400000              # 0x1E8 working-set size in bytes (4 MiB, whole pages)
pace:
        .long   0                       # 0x1EC busy-loop iterations after each page (0 = full speed)
marker_every:
        .long   16                      # 0x1F0 sweeps per "QVG SWEEP" line (0 = never)
        .long   0                       # 0x1F4 reserved (0)

        .org    0x1FE
        .byte   0x55, 0xAA
