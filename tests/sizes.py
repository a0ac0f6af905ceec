"""Model sizes shared by test files (hcold7, issue 19's cold-CI cost).

A numba kernel is compiled once per text and signature (backends/numba_backend.py writes each
text to the kernel cache as a module). A whole-program kernel's text holds its innermost loop
counts (the widths D, H, 4H: hsmall) and the name of the loop module it imports, whose text
holds every size but T (loop_source.LITERAL_ROWS). So two tests share their compiled kernels --
the second loads what the first compiled -- exactly when they run the same model (cell,
options, dtype) at the same D, H and batch B; T is free (hanyT). A test whose sizes are not
what it tests takes them from here. Sizes a test IS about stay in the test with the reason next
to them: odd or padded batches, thresholds (the packed GEMM's weight size, what fits the tap
room: test_tap_matrix's (H, B) = (3, 3) copies the input into the room where (5, 3) holds it),
the (1, 5, 5) tutorial size."""

# A cell from D to H over a batch of B rows on its defaults: test_cells' batched sizes, also
# run by test_hunt_hqa8, test_hunt_hqa10, test_steady, test_numba_program, test_numba_loop,
# test_need_grad_input_rolled and test_numba_program_layouts (the same numba programs).
D, H, B = 3, 4, 2

# Square cells over T*B gate rows that hold every tap copy (T*B >= 4H + 3: test_tap_room's
# rule), wide enough that a whole-program kernel's products are np.dot calls (the input
# projection's (T*B, D) rows among them): test_tap_room, test_hunt_hqa8's memory-layout test.
ROOM_T, ROOM_B, ROOM_H = 6, 8, 8
