# udpecho: the Linux test guest's UDP responder. Sends every datagram received on port 7 back to
# its sender unchanged (so a client's sequence numbers come back). Static, no libc: x86-64 Linux
# system calls only. Blocks in recvfrom, so it costs nothing while nobody talks to it.
        .set SYS_SENDTO, 44
        .set SYS_RECVFROM, 45
        .set SYS_BIND, 49
        .set SYS_SOCKET, 41
        .set SYS_EXIT, 60

        .text
        .globl _start
_start:
        mov     $SYS_SOCKET, %eax
        mov     $2, %edi                # AF_INET
        mov     $2, %esi                # SOCK_DGRAM
        xor     %edx, %edx
        syscall
        test    %eax, %eax
        js      fail
        mov     %eax, %r12d             # the socket
        mov     $SYS_BIND, %eax
        mov     %r12d, %edi
        lea     local(%rip), %rsi
        mov     $16, %edx
        syscall
        test    %eax, %eax
        js      fail
loop:
        movl    $16, peerlen(%rip)
        mov     $SYS_RECVFROM, %eax
        mov     %r12d, %edi
        lea     buf(%rip), %rsi
        mov     $2048, %edx
        xor     %r10d, %r10d
        lea     peer(%rip), %r8
        lea     peerlen(%rip), %r9
        syscall
        test    %rax, %rax
        js      loop                    # EINTR and friends: wait again
        mov     %rax, %rdx              # length
        mov     $SYS_SENDTO, %eax
        mov     %r12d, %edi
        lea     buf(%rip), %rsi
        xor     %r10d, %r10d
        lea     peer(%rip), %r8
        mov     peerlen(%rip), %r9d
        syscall
        jmp     loop
fail:
        mov     $SYS_EXIT, %eax
        mov     $1, %edi
        syscall

        .data
local:  .word   2                       # sin_family AF_INET
        .byte   0, 7                    # sin_port 7, network order
        .long   0                       # INADDR_ANY
        .quad   0

        .bss
        .align  16
peer:   .skip   16
peerlen: .skip  4
        .align  16
buf:    .skip   2048
